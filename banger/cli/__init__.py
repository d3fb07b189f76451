"""The `banger` command line, one module per command group: parse, call one function, print.
main.py assembles the typer app. No logic here that a test must reach through typer.
May import: anything of banger's; nothing imports it (but __main__ and the entry point).
"""
