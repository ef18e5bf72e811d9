"""Frontend: PyTorch networks (modules, torch.export archives, state dicts) → rramc IR."""

from rramc.frontend.fx_import import import_exported, import_graph_module, import_module
from rramc.frontend.model_files import LoadedModel, load_model, save_exported

__all__ = ["LoadedModel", "import_exported", "import_graph_module", "import_module", "load_model", "save_exported"]
