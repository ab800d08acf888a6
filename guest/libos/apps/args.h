/*
 * args.h: command-line helpers shared by the stand-alone guest programs
 * (udp_loadgen, udp_echo_kernel, frame_fuzz): strict number parsing, the
 * one-line "program: option: problem" error, and stop-signal set-up. No state;
 * nothing here exits.
 */
#ifndef LIBOS_APPS_ARGS_H
#define LIBOS_APPS_ARGS_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>

/* Prints "prog: opt: what" on stderr and returns -EINVAL. */
int args_error(const char *prog, const char *opt, const char *what);
/* Digits only, within [min, max]: strtoull alone would accept "-1", " 5" and "0x10". */
int args_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* Digits with an optional fraction, within [min, max]: no sign, exponent, hex, inf, nan. */
int args_decimal(const char *s, double min, double max, double *out);
/*
 * The option getopt just complained about, as the user wrote it: getopt leaves a
 * known long option's value in optopt when its argument is missing, the character
 * of an unknown short one, and 0 for an unknown long one (then the text of the
 * argument it consumed names it).
 */
const char *args_bad_option(const struct option *opts, char **argv, char *buf, size_t len);
/*
 * Runs handler on SIGINT and SIGTERM, without SA_RESTART so that a blocked send or
 * sleep returns and the caller's loop sees the flag its handler set. 0 or -errno.
 */
int args_on_stop_signals(void (*handler)(int));

#endif
