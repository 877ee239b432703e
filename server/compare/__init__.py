"""`slm-server compare`: run an evaluation set through the server and chart speed against quality.

evalset.py   load and validate the JSONL evaluation set (default set in data/)
scoring.py   exact | contains | choice | json-fields, each answer scored in 0..1
runner.py    one streamed request per item and model, timed (server `timings`, else client clock)
stats.py     medians, quartiles and per-model summaries
plot.py      compare.png: median total time (x) against quality (y)
report.py    report.md and results.json
command.py   the CLI face: add_arguments(parser) and run(args) -> exit code
errors.py    CompareError and its subclasses, each with an exit code
"""
