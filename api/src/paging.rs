//! Keyset pages, the one way every list endpoint pages: the size asked for, checked
//! ([`page_size`]); one row more than the page fetched ([`fetch_limit`]) to learn whether more
//! follow; the page cut and the cursor after its last row ([`cut`]).

use crate::problem::ApiError;

/// Page size when the request gives none (or the server's maximum, if smaller).
pub const PAGE_SIZE_DEFAULT: u32 = 50;

/// The page size asked for in `limit`, checked against `max`.
pub fn page_size(limit: Option<u32>, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(PAGE_SIZE_DEFAULT.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::Malformed(format!("limit must be 1 to {max}")));
    }
    Ok(limit)
}

/// How many rows to fetch for a page of `limit`: one more, to know whether another page follows.
pub fn fetch_limit(limit: u32) -> i64 {
    i64::from(limit) + 1
}

/// `rows` fetched with [`fetch_limit`] cut to the page, and the cursor of its last row when
/// more rows follow (`cursor` encodes a row's keys).
pub fn cut<T>(
    mut rows: Vec<T>,
    limit: u32,
    cursor: impl FnOnce(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(cursor) } else { None };
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_bounds() {
        assert_eq!(page_size(None, 200).unwrap(), 50);
        assert_eq!(page_size(None, 10).unwrap(), 10);
        assert_eq!(page_size(Some(200), 200).unwrap(), 200);
        assert!(page_size(Some(0), 200).is_err());
        assert!(page_size(Some(201), 200).is_err());
        assert_eq!(fetch_limit(50), 51);
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_follow() {
        let key = |n: &u32| n.to_string();
        // rows fetched, limit, the page, its next cursor
        type Case = (Vec<u32>, u32, Vec<u32>, Option<&'static str>);
        let cases: [Case; 4] = [
            (vec![], 2, vec![], None),
            (vec![1, 2], 2, vec![1, 2], None),
            (vec![1, 2, 3], 2, vec![1, 2], Some("2")),
            (vec![1], 2, vec![1], None),
        ];
        for (rows, limit, page, next) in cases {
            let (got, cursor) = cut(rows.clone(), limit, key);
            assert_eq!(
                (got, cursor.as_deref()),
                (page, next),
                "{rows:?} by {limit}"
            );
        }
    }
}
