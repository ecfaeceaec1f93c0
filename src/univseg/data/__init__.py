"""Label spaces, datasets, transforms and multi-domain sampling."""
