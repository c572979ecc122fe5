"""One layer in, one report out: the measuring, the bootstrap, the UMAP layout, the layer's
files on disk."""
