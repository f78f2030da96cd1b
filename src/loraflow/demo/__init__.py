"""The demo job shipped inside the package (spec and sample dataset), so `loraflow demo` runs from any
folder with nothing downloaded."""
