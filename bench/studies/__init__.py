"""Studies that decided something; their index is README.md beside this file."""
