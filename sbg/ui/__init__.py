"""The Panel dashboard and its HoloViews plots, the same in Jupyter and served."""
