"""Trust decisions in one place: what may be loaded, who is trusted, and how much untrusted input may cost.

Everything that reads input from someone else (a suspect's model file, a package from a vendor, an
evidence bundle from a third party, an HTTP request from a stranger) asks this package first:

- :mod:`tracemark.trust.modelfiles` -- which model files may be opened (no pickles, no native code, no
  evaluated strings; a ``.pt2`` archive is checked and rebuilt before torch reads it);
- :mod:`tracemark.trust.signers` -- which vendor keys are pinned (flag, ``$TRACEMARK_VENDOR_PUB``, config folder);
- :mod:`tracemark.trust.authorities` -- which time-stamp authority roots are pinned (``--tsa-ca``, ``$TRACEMARK_TSA_CA``);
- :mod:`tracemark.trust.archives` -- bounds on zip archives (members, sizes, ratios) checked before inflating;
- :mod:`tracemark.trust.kdf` -- bounds on the key-derivation work and key-wrap fields a file may demand;
- :mod:`tracemark.trust.requests` -- what one HTTP request may cost the server (admission counts, image decode bounds).

docs/guide/security.md lists every rule and bound with its default.
"""
