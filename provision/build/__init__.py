"""Building Xen and its kernels (``doit world``) and installing them (``doit dist|install``)."""
