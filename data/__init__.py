"""Datasets as nanoGPT-format token files: data/<name>/{train,val}.bin + meta.json (see data/README.md)."""
