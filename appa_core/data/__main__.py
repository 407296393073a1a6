"""``python -m appa_core.data SRC [--out PATH] [--start DATE] [--days N]``: (re)generate the bundled truth slice."""

from appa_core.data.truth import main

if __name__ == "__main__":
    main()
