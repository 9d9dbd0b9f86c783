"""The operator console (``kefu tui``): a terminal UI over the control-plane gRPC API.

Modules: :mod:`~kefu.tui.client` (the client protocol, its gRPC adapter, the snapshot),
:mod:`~kefu.tui.views` (pure: what each table shows), :mod:`~kefu.tui.widgets` (the widgets),
:mod:`~kefu.tui.app` (the Textual app) and :mod:`~kefu.tui.cli` (the command). Textual is
imported only by the last three, so ``import kefu.tui`` stays cheap.
"""

__all__: list[str] = []
