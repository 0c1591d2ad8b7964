"""Checks that run inside the booted dom0, from the code disk: ``python3 -m
provision.proof.indom0.lvmcheck`` and ``...indom0.lvcheck``. Standard library (and
jinja2, for the guest files) only."""
