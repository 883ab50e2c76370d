"""index -> answers: query encoding, target generation, profiles at search time, FAISS over
shard groups, the dask fan-out, fusion, `tda.Searcher`, the HTTP server and client, rendering."""
