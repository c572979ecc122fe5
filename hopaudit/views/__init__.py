"""Renderings of one view state: the live widget, the HTML report, the notebook snapshot."""
