"""The cluster layer: a site file, job submission with the site's options, the pipeline
chain (extract -> check -> train -> validate) and the hyperparameter sweep."""
