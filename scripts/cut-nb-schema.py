#!/usr/bin/env python3
# Regenerates crates/stacknet-ovn/tests/data/ovn-nb-used.ovsschema: the installed OVN
# Northbound schema cut to the tables and columns stacknet uses (stacknet_ovsdb::nb::USED).
# Run from the repository root after changing nb::USED; the ovsdb tier checks the cut.
import json,re
inst=json.load(open('/usr/share/ovn/ovn-nb.ovsschema'))
src=open('crates/stacknet-ovsdb/src/nb.rs').read()
used=src[src.index('pub const USED'):src.index('];',src.index('pub const USED'))]
consts=dict(re.findall(r'pub const (\w+): &str = "(\w+)";',src))
tables=[]
for m in re.finditer(r'\(\s*(\w+),\s*&\[([^\]]*)\],?\s*\)',used):
    t=consts[m.group(1)]; cols=re.findall(r'"(\w+)"',m.group(2)); tables.append((t,cols))
out=['{','  "name": "OVN_Northbound",','  "version": "%s",'%inst['version'],'  "tables": {']
for i,(t,cols) in enumerate(tables):
    it=inst['tables'][t]
    out.append('    "%s": {'%t)
    out.append('      "isRoot": %s,'%('true' if it.get('isRoot',False) else 'false'))
    out.append('      "columns": {')
    for j,c in enumerate(cols):
        out.append('        "%s": %s%s'%(c,json.dumps(it['columns'][c],separators=(', ',': ')),',' if j<len(cols)-1 else ''))
    out.append('      }')
    out.append('    }'+(',' if i<len(tables)-1 else ''))
out+=['  }','}']
open('crates/stacknet-ovn/tests/data/ovn-nb-used.ovsschema','w').write('\n'.join(out)+'\n')
print([t for t,_ in tables])
