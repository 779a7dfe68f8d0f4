"""``python -m workflow.http --app MODULE:ATTR [--host H] [--port P] ...``"""

from __future__ import annotations

from ._serve import serve_main

if __name__ == "__main__":
    serve_main()
