"""The Django project of bench/peers.py: one app (this package itself), one
model (Item), one view listing the items through a template. DEBUG is off;
the SQLite file is djbench.sqlite3 beside this package (bench/peers.py
creates and fills it with `python -m djbench.filldb`)."""
