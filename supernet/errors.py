"""The one base class of bad-input errors. Every layer raises subclasses of it; the entry points in `nas/` turn it
into one `error: ...` line and exit status 2 (`nas.errors.run_cli`)."""


class UserError(Exception):
    """Bad input from the user (a file, a config value, a dataset). Reported as one line, exit code 2."""


class ConfigError(UserError):
    """A config value, override or YAML file is malformed, does not match its schema, or asks for the impossible."""
