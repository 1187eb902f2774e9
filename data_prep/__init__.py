"""Data preparation: writers from ncstudy's datasets to FFCV `.beton` files."""
