"""The operator console (``kefu tui``): a terminal UI over the control-plane gRPC API.

Modules: :mod:`~kefu.tui.client` (the client protocol, its gRPC adapter, the snapshot),
:mod:`~kefu.tui.views` (pure: the tabs in key order, one module per tab —
:mod:`~kefu.tui.fleet_tabs`, :mod:`~kefu.tui.rollouts_tab`, :mod:`~kefu.tui.alerts_tab`,
:mod:`~kefu.tui.regions_tab` — built from :mod:`~kefu.tui.format`), :mod:`~kefu.tui.widgets`
(the widgets), :mod:`~kefu.tui.app` (the Textual app) and :mod:`~kefu.tui.cli` (the command).
Textual is imported only by the last three, so ``import kefu.tui`` stays cheap.
"""

__all__: list[str] = []
