"""The proof that it boots: the hosts the README's commands make, booted under QEMU.

    console.py    a serial console: bounded waits, echo-checked typing, a check report
    machine.py    a QEMU x86_64 machine under TCG, its first serial port as the console
    initramfs.py  a tiny busybox initramfs for "does this kernel reach userspace" tests
    assemble.py   host disk images made by the public commands, run on offline roots
    checks.py     what is checked in the booted host, over its serial console
    cli.py        ``python -m provision boottest``; tasks.py: ``doit boottest``
    indom0/       what runs inside dom0 from the code disk (lvmcheck, lvcheck)

Nothing outside this package imports it. It stays importable with the standard library
alone: dom0 runs indom0/ from a small disk with nothing but python3 and jinja2.
"""
