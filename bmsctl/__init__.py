"""The bmsctl command line."""
