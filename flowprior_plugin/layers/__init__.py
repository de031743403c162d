"""Building blocks shared by the networks of this package."""
