"""harness: QEMU testbeds for kernel-bypass research.

Data flows one way through the package:

    spec file (TOML) --config--> TestbedConfig --plan--> TestbedPlan
        --testbed--> running Testbed (guests, QMP, SSH) --> results

Pure modules (config, plan, qemu_cmd, features, stats) hold no side effects and are
unit tested without QEMU; the edges (images, net, qmp, ssh, guest, testbed, state)
own processes, files and netlink.
"""

__version__ = "0.1.0"
