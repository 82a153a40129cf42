"""Per-application password targets: adapters that set a password in an app's own credential store.

This package is a library: it never imports ``pcns`` or ``vault``. An adapter only ever sees the
plaintext handed to :meth:`targets.base.Target.set_password`.
"""
