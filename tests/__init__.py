"""tda's tests: a package (``tda.tests``), so test modules import their helpers by name
(``from tda.tests import helpers``) and nothing edits ``sys.path``."""
