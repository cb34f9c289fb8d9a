"""Loaded by pytest before the installed plugins (``-p quick_start`` in pyproject.toml).

nbval imports nbformat, nbformat imports jsonschema, and jsonschema imports every
format checker it finds. One of them, rfc3987_syntax (Jupyter asks for
jsonschema[format-nongpl], which brings it), builds 39 Earley parsers as it is
imported: about 3 s of CPU in every pytest process, the controller and each
xdist worker alike, before a test runs. The formats it checks ("iri",
"iri-reference") appear in no notebook's schema. Marked missing here, jsonschema
skips them as it does wherever the package is not installed.
"""
import sys

sys.modules.setdefault("rfc3987_syntax", None)   # None: `import rfc3987_syntax` fails at once
