"""A minimal Chrome DevTools Protocol client over a WebSocket (RFC 6455), standard library
only, for scripts/dashboard-test: start headless Chromium with its own profile, open a page,
evaluate JavaScript, take screenshots, and kill the browser (and its helpers) however the
caller ends.

Every wait has a deadline; nothing here retries forever.
"""
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request


class CdpError(Exception):
    pass


FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-breakpad", "--no-default-browser-check",
    "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]


class WebSocket:
    """A client WebSocket: text frames out (masked, as a client must), whole messages in."""

    def __init__(self, url, timeout):
        if not url.startswith("ws://"):
            raise CdpError(f"{url}: only ws:// URLs")
        rest = url[len("ws://"):]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CdpError("the browser closed the WebSocket during the handshake")
            head += chunk
            if len(head) > 65536:
                raise CdpError("WebSocket handshake answer too large")
        head, _, self.buf = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise CdpError(f"WebSocket handshake refused: {status.decode(errors='replace')}")

    def send(self, text):
        data = text.encode()
        head = bytearray([0x81])  # FIN, text
        n = len(data)
        if n < 126:
            head.append(0x80 | n)
        elif n < 65536:
            head.append(0x80 | 126)
            head += struct.pack("!H", n)
        else:
            head.append(0x80 | 127)
            head += struct.pack("!Q", n)
        mask = os.urandom(4)
        head += mask
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes(head) + masked)

    def _read(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError("timed out waiting for the browser")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                raise CdpError("timed out waiting for the browser") from None
            if not chunk:
                raise CdpError("the browser closed the WebSocket")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, deadline):
        """One whole message (fragments joined); answers pings; raises on close."""
        parts = []
        while True:
            b0, b1 = self._read(2, deadline)
            op, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2, deadline))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8, deadline))[0]
            mask = self._read(4, deadline) if b1 & 0x80 else None
            data = self._read(n, deadline)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if op == 0x8:
                raise CdpError("the browser closed the WebSocket")
            if op == 0x9:  # ping: pong with the same payload
                self.sock.sendall(bytes([0x8A, 0x80 | len(data)]) + b"\0\0\0\0" + data)
                continue
            if op in (0x1, 0x2, 0x0):
                parts.append(data)
                if b0 & 0x80:
                    return b"".join(parts).decode("utf-8", "replace")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Browser:
    """Headless Chromium with a fresh profile, one page, driven over CDP."""

    def __init__(self, chromium, width, height, timeout=30):
        self.tmp = tempfile.mkdtemp(prefix="pgfront-dashboard-test-")
        self.proc = None
        self.ws = None
        self.next_id = 0
        self.events = []
        home = os.path.join(self.tmp, "home")
        os.makedirs(home)
        env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                   XDG_CACHE_HOME=os.path.join(home, ".cache"))
        profile = os.path.join(self.tmp, "profile")
        self.log_path = os.path.join(self.tmp, "chromium.log")
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               "about:blank"]
        with open(self.log_path, "wb") as log:
            # Own process group: one signal ends the browser and its children.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        try:
            port_file = os.path.join(profile, "DevToolsActivePort")
            deadline = time.monotonic() + timeout
            while not (os.path.exists(port_file) and os.path.getsize(port_file) > 0):
                if self.proc.poll() is not None:
                    raise CdpError(f"Chromium exited with {self.proc.returncode}: {self.log_tail()}")
                if time.monotonic() > deadline:
                    raise CdpError(f"Chromium opened no debugging port within {timeout}s: {self.log_tail()}")
                time.sleep(0.05)
            with open(port_file) as f:
                port = int(f.readline().strip())
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
                targets = json.load(r)
            pages = [t for t in targets if t.get("type") == "page"]
            if not pages:
                raise CdpError("Chromium has no page to drive")
            self.ws = WebSocket(pages[0]["webSocketDebuggerUrl"], timeout)
            self.call("Page.enable")
            # Lifecycle events carry the loader id, so open() can tell its own navigation's
            # load from that of a navigation the page began itself (the dashboard's
            # meta refresh), which may fire after open() cleared the events.
            self.call("Page.setLifecycleEventsEnabled", enabled=True)
            self.call("Runtime.enable")
            self.call("Network.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      width=width, height=height, deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log)"
        keep = [l for l in lines if "dbus" not in l.lower()][-8:]
        return "\n  " + "\n  ".join(keep) if keep else "(empty log)"

    def call(self, method, timeout=20, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(deadline))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CdpError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, name, timeout, match=lambda e: True):
        """The first event called `name` for which `match` holds; events before it are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["method"] == name and match(e):
                    del self.events[: i + 1]
                    return e
            self.events.clear()
            msg = json.loads(self.ws.recv(deadline))
            if "method" in msg:
                self.events.append(msg)

    def open(self, url, headers=None, timeout=30):
        """Navigates and waits for the load event; raises on a failed navigation."""
        if headers:
            self.call("Network.setExtraHTTPHeaders", headers=headers)
        self.events.clear()
        r = self.call("Page.navigate", url=url, timeout=timeout)
        if r.get("errorText"):
            raise CdpError(f"{url}: {r['errorText']}")
        loader = r.get("loaderId")
        self.wait_event("Page.lifecycleEvent", timeout,
                        lambda e: e["params"].get("name") == "load"
                        and (loader is None or e["params"].get("loaderId") == loader))

    def eval(self, expression, timeout=20):
        """The value of a JavaScript expression (JSON-serialisable)."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True, timeout=timeout)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CdpError(f"JavaScript failed: {d.get('exception', {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    def screenshot(self, path, full_page=False):
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", timeout=30, **params)["data"])
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise CdpError("the screenshot is not a PNG")
        with open(path, "wb") as f:
            f.write(data)
        return len(data)

    def close(self):
        """Ends the browser, its whole process group and any helper that left it (they name
        our temp dir on their command line), then removes the profile."""
        if self.ws:
            self.ws.close()
            self.ws = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pids = self._ours()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.1)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _ours(self):
        needle = self.tmp.encode()
        mine = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if needle in f.read():
                        mine.append(int(d))
            except OSError:
                pass
        return mine
