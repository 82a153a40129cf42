"""Hooks that run where passwords change and post each change to pcns.

``pcns hook samba`` is the ``--script`` of ``samba-tool user syncpasswords`` on a Samba AD DC;
``pcns hook pam`` runs from ``pam_exec.so expose_authtok`` on a Linux host's password stack.
Both sign and send with :class:`pcns.client.Sender`, the same client as ``pcns notify``.
"""
