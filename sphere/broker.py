"""The embedded topology's broker: kombu's filesystem transport, with messages that appear whole.

kombu writes a message straight into the queue folder (create the file, then write it). A worker
listing the folder in between takes the empty file, cannot decode it and stops with an
"Unrecoverable error": the embedded worker thread is gone and nothing is processed any more (the
demo's dozen devices, each syncing every two seconds, hit it within a minute). Here a message is
written under a name no queue matches and renamed into place once complete: a rename within one
folder is atomic, so a consumer finds no message or the whole one.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        # kombu's own name: the consumer takes "<stamp>_<uuid>.<queue>.msg" in name order.
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
