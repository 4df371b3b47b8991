//! Leases in the database (`crm_leases`): work only one instance may do at a time, such as
//! reading Salesforce's Change Data Capture channel. The holder renews its lease well before it
//! expires; an instance that dies stops renewing, and another takes the lease over once it has
//! expired. Taking is one statement (an insert that, on conflict, updates only an expired lease or
//! the taker's own), so two instances racing for it cannot both win. On PostgreSQL, taking and
//! the keeper's renewals run on their own connection, outside the group transaction, so they
//! never hold a group's other locks while waiting for the lease's row.

use chrono::Utc;
use entity::crm_leases::{self, Column as C};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use std::time::Duration;

/// Takes the lease `name` for `holder` for `ttl`, if it is free, expired or the holder's own.
pub async fn take(c: &impl ConnectionTrait, name: &str, holder: &str, ttl: Duration) -> Result<bool, DbErr> {
    let now = Utc::now();
    // Held by another instance: said without the statement below, which (on PostgreSQL) would
    // wait for the holder's transaction to finish.
    if let Some(row) = crm_leases::Entity::find_by_id(name.to_owned()).one(c).await?
        && row.holder != holder
        && row.expires_at >= now
    {
        return Ok(false);
    }
    let row = crm_leases::ActiveModel {
        name: Set(name.to_owned()),
        holder: Set(holder.to_owned()),
        taken_at: Set(now),
        expires_at: Set(now + chrono::Duration::from_std(ttl).unwrap_or_default()),
    };
    let taken = crm_leases::Entity::insert(row)
        .on_conflict(
            OnConflict::column(C::Name)
                .update_columns([C::Holder, C::TakenAt, C::ExpiresAt])
                .action_and_where(
                    Expr::col((crm_leases::Entity, C::ExpiresAt)).lt(now).or(Expr::col((
                        crm_leases::Entity,
                        C::Holder,
                    ))
                    .eq(holder)),
                )
                .to_owned(),
        )
        .exec_without_returning(c)
        .await?;
    Ok(taken > 0)
}

/// Extends the holder's lease by `ttl` from now; false when another instance holds it now.
pub async fn renew(c: &impl ConnectionTrait, name: &str, holder: &str, ttl: Duration) -> Result<bool, DbErr> {
    let until = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
    let renewed = crm_leases::Entity::update_many()
        .col_expr(C::ExpiresAt, Expr::value(until))
        .filter(C::Name.eq(name))
        .filter(C::Holder.eq(holder))
        .exec(c)
        .await?;
    Ok(renewed.rows_affected > 0)
}

/// Whether `holder` holds the lease (checked in the transaction that writes under it).
pub async fn holds(c: &impl ConnectionTrait, name: &str, holder: &str) -> Result<bool, DbErr> {
    let row = crm_leases::Entity::find_by_id(name.to_owned()).one(c).await?;
    Ok(row.is_some_and(|row| row.holder == holder))
}

/// Gives the lease up (at a clean stop), so another instance need not wait for it to expire.
pub async fn release(c: &impl ConnectionTrait, name: &str, holder: &str) -> Result<(), DbErr> {
    crm_leases::Entity::delete_many().filter(C::Name.eq(name)).filter(C::Holder.eq(holder)).exec(c).await?;
    Ok(())
}
