"""The tally the deployment tests keep: every check counts, and a test with
no check passed fails too (it asserted nothing)."""

failures = []
passes = 0


def check(ok, what):
    global passes
    if ok:
        passes += 1
    else:
        failures.append(what)
    return ok


def report(name):
    """Prints the failures and the tally; the exit status."""
    for f in failures:
        print("FAIL:", f)
    print(f"{name}: {passes} passed, {len(failures)} failed")
    return 0 if not failures and passes > 0 else 1
