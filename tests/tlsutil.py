"""Certificates for the TLS tests, made with the openssl command: a private CA, certificates it signs
for a host name (or IP address), a self-signed one, an expired one, and password hashes made by
other programs (libxcrypt through Python's crypt module, openssl passwd)."""

import subprocess
import warnings
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # libxcrypt: the same hashes as passwd(1) and mkpasswd


def openssl(*args, cwd=None):
    run = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert run.returncode == 0, f"openssl {' '.join(args)} failed:\n{run.stderr}"
    return run.stdout


class CA:
    """A private certificate authority in `folder`: ca.crt and ca.key."""

    def __init__(self, folder, name="Postel Test CA"):
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "ca.crt"
        self.key = self.dir / "ca.key"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(self.key), "-out", str(self.cert), "-days", "30", "-subj", f"/CN={name}")

    def issue(self, name, key_type="ec", start=None, end=None):
        """A certificate for `name` (a DNS name or 127.0.0.1) and its key: (cert path, key path).

        `start`/`end` ("20200101000000Z") give explicit validity dates, for expired certificates."""
        base = self.dir / name.replace("*", "star")
        key, csr, cert = (base.with_suffix(s) for s in (".key", ".csr", ".crt"))
        newkey = ["-newkey", "rsa:2048"] if key_type == "rsa" else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        openssl("req", *newkey, "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        san = f"IP:{name}" if name.replace(".", "").isdigit() else f"DNS:{name}"
        ext = base.with_suffix(".ext")
        ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        if start or end:
            self._ca_sign(csr, cert, ext, start, end)
        else:
            openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                    "-CAcreateserial", "-out", str(cert), "-days", "30", "-extfile", str(ext))
        return cert, key

    def _ca_sign(self, csr, cert, ext, start, end):
        db = self.dir / "db"
        db.mkdir(exist_ok=True)
        (db / "index.txt").touch()
        (db / "serial").write_text("1000\n")
        conf = db / "ca.cnf"
        conf.write_text(
            "[ca]\ndefault_ca = local\n[local]\n"
            f"database = {db}/index.txt\nnew_certs_dir = {db}\nserial = {db}/serial\n"
            "default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n"
        )
        openssl("ca", "-batch", "-config", str(conf), "-cert", str(self.cert), "-keyfile", str(self.key),
                "-in", str(csr), "-out", str(cert), "-startdate", start, "-enddate", end,
                "-extfile", str(ext), "-notext")


def self_signed(folder, name="postel.test"):
    """A self-signed certificate and key in `folder`."""
    folder = Path(folder)
    cert, key = folder / f"{name}.self.crt", folder / f"{name}.self.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=DNS:{name}")
    return cert, key


def libxcrypt_hash(password, method):
    """A crypt(3) hash made by the system's libxcrypt: method "yescrypt", "sha512" or "bcrypt"."""
    if method == "yescrypt":
        return crypt.crypt(password, "$y$j9T$" + crypt.mksalt(crypt.METHOD_SHA512)[3:19] + "$")
    return crypt.crypt(password, crypt.mksalt({"sha512": crypt.METHOD_SHA512, "bcrypt": crypt.METHOD_BLOWFISH}[method]))


def libxcrypt_verify(password, hashed):
    return crypt.crypt(password, hashed) == hashed
