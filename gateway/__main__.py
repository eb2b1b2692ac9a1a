"""`python -m gateway`: the same command as the `rems-gateway` console script."""

from gateway.cli import app

app(prog_name="rems-gateway")
