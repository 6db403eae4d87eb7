"""CCF JavaScript applications (set_js_app bundles) written the way CCF users write them, built with npm by build.py."""
