from angiogate.cli import app

app(prog_name="angiogate")
