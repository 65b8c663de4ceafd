"""The flow: replay a source, run the pipeline chunk by chunk, keep history and metrics; batch detect."""
