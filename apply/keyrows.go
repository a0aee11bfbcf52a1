package apply

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
)

// presentQuery selects the rows of lt with the given keys (one row each).
func presentQuery(lt *localTable, keys [][]string) (string, []any) {
	return keyRowsQuery(lt, keys, "1", false)
}

// lockQuery locks the rows of lt with the given keys, in the order of their
// typed values (the primary key's order, as a local multi-row UPDATE that
// scans it would), and returns the canonical key and xmin of each present
// one; see scanLocked.
func lockQuery(lt *localTable, keys [][]string) (string, []any) {
	return keyRowsQuery(lt, keys, lt.keyText()+", xmin::text", true)
}

// keyRowsQuery selects sel from the rows of lt with the given keys, one
// text array parameter per key column; if lock, it locks them in key order.
// Each key is looked up on its own (a lateral subquery limited to one row)
// so that the plan probes the primary key whatever the planner believes of
// the table's size: the join of a key array to a table that was empty when
// the session planned it scanned the whole table for every key (the plan
// cache keeps a generic plan). The names the query gives the key array and
// the table are prefixed so that they cannot collide with a user's column
// or table.
func keyRowsQuery(lt *localTable, keys [][]string, sel string, lock bool) (string, []any) {
	cols := make([][]string, len(lt.keys))
	for _, k := range keys {
		for i := range lt.keys {
			if i < len(k) {
				cols[i] = append(cols[i], k[i])
			}
		}
	}
	var unnest, names, casts, order, keyCols, keyRefs []string
	args := make([]any, len(cols))
	for i, k := range lt.keys {
		names = append(names, fmt.Sprintf("k%d", i))
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", i+1))
		casts = append(casts, fmt.Sprintf("CAST(u.k%d AS %s) AS casualdb_k%d", i, lt.keyTyp[i], i))
		order = append(order, fmt.Sprint(i+1))
		keyCols = append(keyCols, "casualdb_t."+pgx.Identifier{k}.Sanitize())
		keyRefs = append(keyRefs, fmt.Sprintf("casualdb_keys.casualdb_k%d", i))
		args[i] = cols[i]
	}
	forUpdate, orderBy := "", ""
	if lock {
		// The nested loop takes the keys in this order, and locks each
		// row as it finds it.
		forUpdate, orderBy = " FOR UPDATE", " ORDER BY "+strings.Join(order, ", ")
	}
	q := fmt.Sprintf(`SELECT casualdb_row.* FROM (SELECT %s FROM unnest(%s) AS u(%s)%s) AS casualdb_keys
		CROSS JOIN LATERAL (SELECT %s FROM %s AS casualdb_t WHERE (%s) = (%s) LIMIT 1%s) AS casualdb_row`,
		strings.Join(casts, ", "), strings.Join(unnest, ", "), strings.Join(names, ", "), orderBy,
		sel, lt.ident, strings.Join(keyCols, ", "), strings.Join(keyRefs, ", "), forUpdate)
	return q, args
}

// scanLocked reads (and closes) the rows of lockQuery: xmin by canonical key.
func scanLocked(lt *localTable, rows pgx.Rows) (map[string]uint32, error) {
	defer rows.Close()
	out := map[string]uint32{}
	for rows.Next() {
		vals := make([]string, len(lt.keys)+1)
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, fmt.Errorf("lock rows of %s: %w", lt.name, err)
		}
		x, _ := strconv.ParseUint(vals[len(lt.keys)], 10, 32)
		out[casualdb.KeyString(vals[:len(lt.keys)])] = uint32(x)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lock rows of %s: %w", lt.name, err)
	}
	return out, nil
}
