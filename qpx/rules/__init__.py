"""Rule matching: which rule (of a listener, a reverse server, a connection filter)
applies to a request.

Public API::

    from qpx.rules import RuleSet, MatchContext, parse_ip, validate_match

    key = parse_ip("::ffff:10.1.2.3")          # once per connection
    rs = RuleSet.compile(specs)                 # once, in the master, before fork
    rs.first_match(MatchContext(src_ip=key, host="a.example.com", ...))  # -> index | -1

Modules, one job each: ``patterns`` (pattern classes, globs), ``iptrie`` (address
keys, CIDRs, prefix trie), ``bitset`` (bytearray masks), ``matcher`` (one rule, full
semantics), ``prefilter`` (which rules can match at all), ``validate`` (error
messages), ``engine`` (``RuleSet``/``MatchContext``).  Never imports gevent.
"""

from .engine import MatchContext, RuleCompileError, RuleSet
from .iptrie import ip_text, parse_ip
from .validate import validate_match

__all__ = ["MatchContext", "RuleCompileError", "RuleSet", "ip_text", "parse_ip",
           "validate_match"]
