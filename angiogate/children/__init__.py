"""Child processes on loopback, for the bench and the tests alike.

process: starting a child with its output in a log file, waiting for it,
ending it by its PID (never by name), and killing leftovers at exit;
dcmtk: DCMTK's storescp, storescu and echoscu found and driven; gate:
`angiogate serve` as a child, ready once it listens and says so.
"""
