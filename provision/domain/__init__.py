"""Domains: xl configs, /etc/xen/auto and xendomains (issue 6)."""
