"""The CNI binary: a thin, stdlib-only shim that forwards CNI calls to the node agent."""

from __future__ import annotations

import json
import os
import sys

from cni_plugin import contract


def main() -> int:
    version = contract.CNI_SPEC_VERSION
    if os.environ.get("CNI_COMMAND") == "VERSION":
        print(json.dumps({"cniVersion": version,
                          "supportedVersions": list(contract.CNI_SUPPORTED_VERSIONS)}))
        return 0
    print(json.dumps({"cniVersion": version, "code": contract.ERR_PLUGIN_NOT_AVAILABLE,
                      "msg": "eniway: not implemented yet"}))
    return 1


if __name__ == "__main__":
    sys.exit(main())
