/* args.c: see args.h. */
#include "args.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int args_error(const char *prog, const char *opt, const char *what)
{
	fprintf(stderr, "%s: %s: %s\n", prog, opt, what);
	return -EINVAL;
}

int args_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end != '\0' || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

int args_decimal(const char *s, double min, double max, double *out)
{
	char *end;
	double v;

	if (!s || *s < '0' || *s > '9' || s[strspn(s, "0123456789.")] != '\0')
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	/* the range test also rejects NaN */
	if (errno || *end != '\0' || !(v >= min && v <= max))
		return -EINVAL;
	*out = v;
	return 0;
}

const char *args_bad_option(const struct option *opts, char **argv, char *buf, size_t len)
{
	const struct option *o;
	const char *a = argv[optind - 1];

	for (o = opts; o->name; o++) {
		if (optopt == o->val) {
			snprintf(buf, len, "--%s", o->name);
			return buf;
		}
	}
	if (optopt > 0 && optopt < 256) {
		snprintf(buf, len, "-%c", optopt);
		return buf;
	}
	snprintf(buf, len, "%.*s", (int)strcspn(a, "="), a);
	return buf;
}

int args_on_stop_signals(void (*handler)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
		return -errno;
	return 0;
}
