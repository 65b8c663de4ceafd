"""Scale-out with Dask: the same pipeline on a cluster, with identical results."""
