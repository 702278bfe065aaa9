from backinstock.cli import app

app(prog_name="backinstock")
