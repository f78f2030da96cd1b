"""`python -m loraflow.field_map [docs/engines.md]`: write the table into the page, or print it."""

import sys
from pathlib import Path

from loraflow.field_map.docs import markdown, with_table

if len(sys.argv) > 1:
    target = Path(sys.argv[1])
    target.write_text(with_table(target.read_text(encoding="utf-8")), encoding="utf-8")
else:
    sys.stdout.write(markdown())
