"""The application: what sits above the library and turns it into a tool an organisation runs.

``cli`` (the typer app) and ``train_cli``; ``config`` (the `armor train` options and the run builder);
``rundir`` (everything about a run directory); ``measure`` (one model, every figure the report shows);
``results`` (results.json: schema, validation, the CI gate); ``claims``; ``report`` (the HTML). The library
below (:mod:`armor`) never imports from here; domains plug their datasets, measurements, report sections and
demos in through :mod:`armor.plugins`.
"""
