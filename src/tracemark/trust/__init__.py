"""Trust decisions in one place: what may be loaded, who is trusted, and how much untrusted input may cost.

Everything that reads input from someone else (a suspect's model file, a package from a vendor, an
evidence bundle from a third party, an HTTP request from a stranger) asks this package first:

- :mod:`tracemark.trust.modelfiles` -- which model files may be opened (no pickles, no opaque members);
- :mod:`tracemark.trust.signers` -- which vendor keys and time-stamp authorities are pinned;
- :mod:`tracemark.trust.archives` -- bounds on zip archives (members, sizes, ratios) before inflating;
- :mod:`tracemark.trust.kdf` -- bounds on key-derivation cost a file may demand.
- :mod:`tracemark.trust.requests` -- what one HTTP request may cost the server (admission counts, image decode bounds).
"""
