"""Launch the MEMatte demo (the Hugging Face Space): ``python app.py --model ID_OR_PATH --sam-model ID_OR_PATH``.

Options and their environment variables are listed by ``python app.py --help`` and in ``space/README.md``.
"""

import sys
from pathlib import Path

# The app package `space/` sits next to this file, in the repository and in the Space alike.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from space.launch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
