"""Host networking for Xen guests: a bridge that takes over the uplink, or a routed host.

    python -m provision network bridge [--uplink eth0] [--ip 192.0.2.1/24 --gateway 192.0.2.254]
    python -m provision network routed [--uplink eth0]
    python -m provision network bridge --apply      # live, rolled back unless confirmed
    python -m provision network confirm
    python -m provision network status

The configuration is written for the network stack the root uses (ifupdown or
systemd-networkd, see :mod:`provision.network.discover`) and xl's defaults
(``vif.default.bridge`` or ``vif.default.script``) in ``/etc/xen/xl.conf``, so that
``domain create``'s vifs land on the bridge or are routed.
"""
